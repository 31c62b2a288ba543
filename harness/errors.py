"""The one exception type a user mistake raises: the CLI prints it as one line."""


class UserError(Exception):
    """A mistake in the user's input: printed as one line, exit status 2.

    The message names the input and says what to do, e.g.
    ``UserError("--model foo.gguf: no such file; pass a GGUF file or a model directory")``.
    """
