"""autotune's errors: one root, each subclass also the builtin it means, each message saying what to do."""

from __future__ import annotations


class AutotuneError(Exception):
    """Root of every error autotune raises on purpose."""


def first_line(error: BaseException) -> str:
    """An error's message in one line, for a one-line report; its type when it has no message."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class ProfileError(AutotuneError, ValueError):
    """A profile file or value is malformed; the message names the field."""


class UnreadableProfile(ProfileError):
    """A profile file cannot be read as text (missing, unreadable, not UTF-8); a library folder skips it."""


class IncompatibleProfile(AutotuneError, ValueError):
    """The profile was made for another pipeline and cannot be applied to this one."""


class UnknownModel(AutotuneError, ValueError):
    """The model argument names nothing autotune can load."""


class NothingFits(AutotuneError, RuntimeError):
    """No configuration met the goal (memory budget or quality floor)."""


class NoProfileFits(AutotuneError, LookupError):
    """No profile in the library fits this pipeline and machine; nothing was applied. The message lists why."""


class CannotWrite(AutotuneError, OSError):
    """A file or folder autotune must write cannot be written (read-only, full disk); the message names the path."""

    def __str__(self) -> str:  # OSError would show its errno tuple
        return str(self.args[0]) if self.args else "cannot write"


class StorageFailed(AutotuneError, RuntimeError):
    """The study's storage failed under a command (a full disk, a read-only or removed folder, a lost server); the
    study keeps the trials recorded before it, and the message says what to do before running the command again."""


class AutotuneWarning(UserWarning):
    """Root of autotune's warnings."""


class FallbackWarning(AutotuneWarning):
    """A knob value is unavailable here and a fallback was applied instead."""


class ProfileMismatchWarning(AutotuneWarning):
    """The profile was measured on other hardware or library versions; its numbers may not hold here."""


class InvalidInput(AutotuneError, ValueError):
    """A flag, argument or option value is wrong; the message names it and what it accepts."""


class InvalidOption(InvalidInput):
    """A search option's value is wrong (`options.SearchOptions`): `option` names it as Python does (`n_trials`),
    `problem` says what is wrong; the command line says the same of its flag (`--trials`)."""

    def __init__(self, option: str, problem: str):
        super().__init__(f"{option} {problem}")
        self.option, self.problem = option, problem


class ReportError(AutotuneError, ValueError):
    """A report's source cannot be found or opened, or its page cannot be written; the message says what to give."""


class Unavailable(AutotuneError, RuntimeError):
    """Something a request needs is not on this machine (a package, a local model); the message says what to use."""


class UnknownKnob(AutotuneError, LookupError):
    """A knob name (in a pin, a profile or a rule) names no registered knob."""

    def __str__(self) -> str:  # LookupError would quote the message like a key
        return str(self.args[0]) if self.args else "unknown knob"


class KnobConflict(IncompatibleProfile):
    """Two settings exclude each other (or one lacks what it requires); the message names both knobs."""


class TrialFailed(AutotuneError, RuntimeError):
    """A worker's task failed: out of memory, an exception, a crash or a timeout. `kind` says which."""

    def __init__(self, kind: str, reason: str):
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason
