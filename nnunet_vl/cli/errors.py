"""Turn the plugin's expected errors into one clear message and a non-zero exit code."""
from __future__ import annotations

import os
import sys
from collections.abc import Callable

from nnunet_vl.text.cache import TextCacheMissingError
from nnunet_vl.text.contract import TextContractError
from nnunet_vl.text.corpora import CorpusError
from nnunet_vl.text.encoders import EncoderNotFoundError


class CheckFailedError(ValueError):
    """`nnunet_vl check` found errors (already listed one per line)."""


EXPECTED_ERRORS = (TextContractError, TextCacheMissingError, CorpusError, EncoderNotFoundError, ValueError,
                   FileNotFoundError, FileExistsError)


def run_with_clear_errors(job: Callable[[], object]) -> int:
    """Run job; an expected error prints 'ERROR: ...' lines (no traceback; NNUNET_VL_DEBUG=1 shows it) and
    returns 1."""
    try:
        job()
    except EXPECTED_ERRORS as e:
        if os.environ.get("NNUNET_VL_DEBUG"):
            raise
        for line in str(e).splitlines() or [type(e).__name__]:
            print(f"ERROR: {line}", file=sys.stderr)
        return 1
    return 0
