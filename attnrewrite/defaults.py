"""Sizes the stages use when the user gives none. The command line shows them in --help, so
this module imports nothing (no onnx, no torch: --help must stay fast)."""

VERIFY_SEQ_LEN = 11  # the parity run's length: deliberately unlike export lengths (8, 16, 128)
REPORT_SEQ_LEN = 64  # small models often have 64 positions: pass the target length
REPORT_BATCH = 2  # rows of generated or text inputs (auto: half to choose, half held out)
LONG_CONTEXT = 4096  # beyond this, one row unless asked: as many positions as two rows at half
# the length, and half the memory (SmolLM2's report at 8192: 7.0 GiB with one row, 14.4 with two)


def default_batch(seq_len: int, auto: bool) -> int:
    """--batch when the user gives none: REPORT_BATCH, but one row past LONG_CONTEXT tokens
    except for --method auto, whose end-to-end check holds out half the rows."""
    return REPORT_BATCH if auto or seq_len <= LONG_CONTEXT else 1
