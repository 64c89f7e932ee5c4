"""A tiny inventory library: items, stock levels and exports."""
