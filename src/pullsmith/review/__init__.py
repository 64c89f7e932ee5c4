"""Code review whose findings are checked: `pullsmith review` (see docs/review.md).

`diff` turns a target (a base, a commit, the uncommitted changes, a pull request) into two
commits and parsed hunks without touching the user's tree; `prompt` is the conversation and its
lenient parser; `runner` runs one review; `checker` runs the demonstrations of P0/P1 findings in
the sandbox on both trees; `schema` is the JSON; `render` the terminal and Markdown;
`pull_request` keeps reviews with local pull requests; `commands` is the command.
"""
