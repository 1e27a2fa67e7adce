"""Find the nnU-Net function that called into a trainer or builder (nnU-Net passes them nothing about itself)."""
from __future__ import annotations

import sys
from types import CodeType, FrameType


def calling_frame(code: CodeType, skip: int = 2) -> FrameType | None:
    """The nearest frame on the call stack that runs `code` (above the caller of this function), or None."""
    frame = sys._getframe(skip)
    while frame is not None and frame.f_code is not code:
        frame = frame.f_back
    return frame
