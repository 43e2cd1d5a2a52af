"""Library messages that are noise on a command line, dropped by their exact text so that real warnings stay.

With torchao installed, `import diffusers` makes three libraries talk on stderr before autotune says anything:
torchao cannot load the CUDA kernels (mxfp8, cutlass sm90a) built for GPUs this machine lacks; torch warns that
torchao registers an Enum the old way; diffusers cannot import torchao's older tensor classes for loading
checkpoints. None of them is the user's to act on, and a command line promises one line for a bad input.
"""

from __future__ import annotations

import logging

# logger name -> text of the message dropped from it (each from the installed library's source)
NOISE = {
    "torchao": "Failed to load ",
    "torch.utils._pytree": "is an Enum subclass and is now natively supported by torch.compile",
    "diffusers.quantizers.torchao.torchao_quantizer": "Unable to import `torchao` Tensor objects",
}


class _DropText(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def quiet_library_noise() -> None:
    """Drop the messages in NOISE from their loggers, in this process; call before diffusers is imported."""
    for name, text in NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropText) and f.text == text for f in logger.filters):
            logger.addFilter(_DropText(text))
