"""Human units. Data stays in integer bytes and FLOPs; these only format.

Decimal by default, as the textbooks count: 1 MB = 10^6 bytes, 1 GFLOP = 10^9 FLOPs. MiB on request.
"""

from __future__ import annotations


def fmt_bytes(n: int | float | None, *, binary: bool = False) -> str:
    if n is None:
        return "-"
    if binary:
        return f"{n / 2**20:,.2f} MiB"
    return f"{n / 1e6:,.2f} MB"


def fmt_flops(n: int | float | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e9:,.4f} GFLOP" if n < 1e9 else f"{n / 1e9:,.2f} GFLOP"


def fmt_count(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"
