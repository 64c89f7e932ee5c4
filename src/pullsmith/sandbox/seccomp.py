"""A seccomp filter for bwrap's `--seccomp`: a short denylist of kernel interfaces.

Builds, tests and package managers have no use for these, and they are where kernel exploits
tend to start (io_uring, eBPF, perf events, userfaultfd) or they reach state shared with the
host (the kernel keyring, kernel modules, mounts, swap, the kernel log). Refused calls fail with
EPERM, as under Docker's default profile. Calls of another ABI than this interpreter's (32-bit
x86 on x86_64, x32, 32-bit ARM on aarch64) are refused altogether, since their numbers differ
and would slip past the list. Capabilities are already dropped, so most of these would fail
anyway; the filter is the second wall, and the one that covers io_uring, bpf, perf_event_open,
userfaultfd and keyctl, which need no capability.

The program is classic BPF, as `struct sock_filter` entries in native byte order. On an
architecture not listed here there is no filter (`seccomp_program` returns None).
"""

from __future__ import annotations

import errno
import functools
import platform
import struct

# linux/audit.h
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
# linux/seccomp.h
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
# linux/filter.h: BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_JMP|BPF_JGE|BPF_K, BPF_RET|BPF_K
LD_W_ABS, JEQ_K, JGE_K, RET_K = 0x20, 0x15, 0x35, 0x06
# struct seccomp_data: int nr; __u32 arch; ...
NR_OFFSET, ARCH_OFFSET = 0, 4
X32_SYSCALL_BIT = 0x40000000

# name: (x86_64, aarch64 / asm-generic)
DENIED_SYSCALLS: dict[str, tuple[int | None, int | None]] = {
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "userfaultfd": (323, 282),
    "keyctl": (250, 219),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "kexec_load": (246, 104),
    "kexec_file_load": (320, 294),
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "open_tree": (428, 428),
    "move_mount": (429, 429),
    "fsopen": (430, 430),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fspick": (433, 433),
    "mount_setattr": (442, 442),
    "open_by_handle_at": (304, 265),
    "swapon": (167, 224),
    "swapoff": (168, 225),
    "reboot": (169, 142),
    "acct": (163, 89),
    "quotactl": (179, 60),
    "syslog": (103, 116),
    "lookup_dcookie": (212, 18),
    "iopl": (172, None),
    "ioperm": (173, None),
}


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def build_program(machine: str) -> bytes | None:
    """The filter for `machine` (platform.machine()), or None when it is not known."""
    if machine not in AUDIT_ARCH:
        return None
    column = 0 if machine == "x86_64" else 1
    numbers = sorted({n[column] for n in DENIED_SYSCALLS.values() if n[column] is not None})
    deny = SECCOMP_RET_ERRNO | errno.EPERM
    checks: list[tuple[int, int]] = []  # (opcode, k) of each jump to `deny`
    if machine == "x86_64":
        checks.append((JGE_K, X32_SYSCALL_BIT))
    checks += [(JEQ_K, number) for number in numbers]
    # 0: load arch; 1: other ABI -> deny; 2: load nr; 3..: checks; then allow; then deny.
    deny_at = 3 + len(checks) + 1
    program = [
        _insn(LD_W_ABS, ARCH_OFFSET),
        _insn(JEQ_K, AUDIT_ARCH[machine], jt=0, jf=deny_at - 2),
        _insn(LD_W_ABS, NR_OFFSET),
    ]
    for index, (code, k) in enumerate(checks, start=3):
        program.append(_insn(code, k, jt=deny_at - index - 1, jf=0))
    program += [_insn(RET_K, SECCOMP_RET_ALLOW), _insn(RET_K, deny)]
    return b"".join(program)


@functools.cache
def seccomp_program() -> bytes | None:
    """The filter for this machine, or None (unknown architecture, or a 32-bit interpreter)."""
    if struct.calcsize("P") != 8:
        return None
    return build_program(platform.machine())
