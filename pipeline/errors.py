"""The one exception type that stage scripts turn into a single-line message and exit 2."""


class PipelineError(Exception):
    """Bad input or a broken contract between stages; the message is shown to the user as is."""
