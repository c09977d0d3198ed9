"""`tokenmill serve --lora NAME=PATH`: parsed into {name: path}, malformed or repeated flags refused by name."""

import pytest

from tokenmill.commands.serve import lora_adapters


def test_lora_flags_become_names_and_paths():
    assert lora_adapters(["sql=./a", "chat=/b=c"]) == {"sql": "./a", "chat": "/b=c"}
    assert lora_adapters(None) == {}


@pytest.mark.parametrize("flags, message", [(["sql"], "NAME=PATH"), (["=x"], "NAME=PATH"), (["a="], "NAME=PATH"),
                                            (["a=x", "a=y"], "'a' is given twice")])
def test_bad_lora_flags_are_refused(flags, message):
    with pytest.raises(SystemExit, match=message):
        lora_adapters(flags)
