"""Every error ua-sentinel raises on purpose, under one base class, in three kinds.

::

    SentinelError                 anything ua-sentinel raised on purpose (never a bug)
    ├── SetupError                a setting, file or flag the user can fix; the CLI prints the
    │   │                         message as one line and exits 1, never a traceback
    │   ├── AllowlistError        an allowlist that does not parse or validate (core.allowlist)
    │   ├── CertificateError      a TLS pair or CA that cannot be loaded (serve.tls)
    │   ├── SettingsError         serve/tail cannot start with these settings (startup)
    │   ├── StateLocked           another tailer holds the state directory (tail.checkpoint)
    │   ├── StateReadError        the checkpoint ConfigMap cannot be read at start (kube.state_configmap)
    │   └── CliError              arguments that do not fit together (cli)
    ├── InputError                one piece of input is malformed: it is counted and skipped (or
    │   │                         answered 400), never the end of a run
    │   ├── MalformedEvent        an audit event (core.audit)
    │   ├── AuditBodyError        an /audit body that is no EventList (inputs.eventlist)
    │   ├── ReviewError           an AdmissionReview that cannot be judged (serve.admission)
    │   └── (serve.routes' private _TooLarge, _Gone, _Refused: a request answered 413/400/403
    │                             before a handler reads it)
    └── DeliveryError             a sink could not take a finding; the outbox retries it
        ├── SinkError             (sinks)
        └── StateWriteError       the checkpoint's ConfigMap copy was not written; the tailer
                                  retries it (an OSError too: its checkpoint-error path)

The split is the one kopf draws between a bad webhook request and a denial: callers catch the
kind they can act on (``except SetupError`` at the CLI, ``except InputError`` around one line)
and let everything else be a bug with a traceback. Subclasses that were ``ValueError`` before
stay ``ValueError`` too, so no caller's ``except ValueError`` changed meaning.
"""

from __future__ import annotations

__all__ = ["DeliveryError", "InputError", "SentinelError", "SetupError"]


class SentinelError(Exception):
    """Base of every error ua-sentinel raises on purpose."""


class SetupError(SentinelError):
    """A setting, file or flag the user can fix; the message says which and how, in one line."""


class InputError(SentinelError, ValueError):
    """One piece of input (a line, an event, a request body) is malformed: count it, skip it."""


class DeliveryError(SentinelError):
    """A sink could not take a finding now; the outbox keeps it and retries."""
