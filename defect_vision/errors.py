"""The library's error types: each message names the file (or option) and the problem; the CLI prints it as one
line and exits with code 2."""


class DatasetError(Exception):
    """Bad input: a missing, malformed or inconsistent file or option."""


class OutputError(DatasetError):
    """An output place that must not be written: a file where a folder goes, a folder holding the input, or a
    folder that is not a previous output of the same command (without --force)."""


class ConfigError(DatasetError):
    """A bad value of a config field. The message names fields in braces (`"{conf} 1.5: must be within [0, 1]"`):
    the library says the field (`conf 1.5: ...`), the CLI the flag that set it (`--conf 1.5: ...`, `flag_message`)."""

    def __init__(self, template: str, *fields: str):
        self.template, self.fields = template, fields
        super().__init__(self._say(lambda f: f))

    def _say(self, name) -> str:
        text = self.template
        for f in self.fields:
            text = text.replace("{" + f + "}", name(f))
        return text

    def flag_message(self) -> str:
        return self._say(lambda f: "--" + f.replace("_", "-"))


def error_text(exc: Exception) -> str:
    """An error as one JSON line that crosses a process boundary (a Ray actor's rows) and comes back as the same
    kind of error (`error_from_text`): a ConfigError keeps its template and fields, so the CLI still names flags."""
    import json

    if isinstance(exc, ConfigError):
        return json.dumps({"template": exc.template, "fields": list(exc.fields)})
    return json.dumps({"message": str(exc)})


def error_from_text(text: str) -> DatasetError:
    import json

    d = json.loads(text)
    return ConfigError(d["template"], *d["fields"]) if "template" in d else DatasetError(d["message"])
