"""The two kinds of error a user can cause, kept apart because they cost different things."""


class EdgesegError(Exception):
    """A problem that stops the run: a bad model, a bad option, an unwritable output.

    The message is one line that says what was wrong, what was expected, what was received
    and, where there is one, the fix. The command line prints it and exits with status 2.
    """


class BadInputError(EdgesegError):
    """One bad item (a frame, an image file, a stream read): it costs that item, not the run.

    Pipelines catch it per item, count it, log it in one line and record it in their outputs.
    """
