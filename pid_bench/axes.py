"""The setting axes of a suite, declared once (filled in by issue 26; stub for the key list)."""

from __future__ import annotations

#: The columns that name one setting: rows of one setting and decoder are one leaderboard row,
#: one set-level group and one default comparison group.
SETTING_KEYS: tuple[str, ...] = (
    "mode", "backbone", "ckpt_type", "precision", "compile", "out_height", "out_width", "sigma",
    "save_xt_step",
)  # fmt: skip
