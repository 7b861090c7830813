"""A chat template given in the config, used instead of the GGUF's own (llama.cpp's `--chat-template-file`,
vLLM's `--chat-template`): for a GGUF whose template is missing or wrong, or to give a model tool syntax
(engines/llamacpp/tools.py reads the template in use to decide how tools reach the model).

The worker and the gateway's token counter both apply it with `use_template`, so prompt counts stay exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def resolve(value: str, base_dir: Path | None = None) -> str:
    """The template text of a config value: the text itself, or, when the value is one line naming a file (a
    relative path from `base_dir`, else the working directory), that file's contents. Raises ValueError for a
    one-line value with no Jinja in it that names no file."""
    if "\n" not in value and "{" not in value:
        path = Path(value).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        if not path.is_file():
            raise ValueError(f"chat_template {value!r} is neither a Jinja template nor a file")
        return path.read_text()
    return value


def check(template: str) -> None:
    """Raises ValueError when `template` is not valid Jinja (the worker would fail to start on it)."""
    import jinja2
    import jinja2.ext

    class Generation(jinja2.ext.Extension):
        # Hugging Face's `{% generation %}` block, which llama-cpp-python's formatter passes through.
        tags = {"generation"}

        def parse(self, parser: jinja2.parser.Parser) -> list:
            parser.stream.skip(1)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    try:
        # What llama-cpp-python's Jinja2ChatFormatter compiles with (checked without importing llama.cpp here).
        jinja2.Environment(extensions=[jinja2.ext.loopcontrols, Generation]).parse(template)
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"chat_template is not a valid Jinja template: {exc.message} (line {exc.lineno})") from None


def use_template(llm: Any, template: str) -> None:
    """Makes `llm` (a llama_cpp.Llama) format chats with `template`, built as `Llama.__init__` builds the GGUF's
    own (its begin and end tokens' text, generation stopping at its end token)."""
    from llama_cpp import llama_chat_format

    eos_id, bos_id = llm.token_eos(), llm.token_bos()
    eos = llm._model.token_get_text(eos_id) if eos_id != -1 else ""
    bos = llm._model.token_get_text(bos_id) if bos_id != -1 else ""
    llm.chat_handler = llama_chat_format.Jinja2ChatFormatter(
        template=template, eos_token=eos, bos_token=bos, stop_token_ids=[eos_id]).to_chat_handler()
    llm.metadata["tokenizer.chat_template"] = template
