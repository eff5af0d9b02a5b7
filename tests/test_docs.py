import re

import yaml

from fedml.config import SECTIONS

from .conftest import ROOT


def test_configuration_reference_lists_every_key_with_its_default():
    text = (ROOT / "docs" / "configuration.md").read_text()
    for section, model in SECTIONS.items():
        body = text.split(f"### {section}\n", 1)[1].split("\n### ", 1)[0]
        for key, field in model.model_fields.items():
            row = re.search(rf"^\| `{key}` \| `([^`]*)` \|", body, re.MULTILINE)
            assert row, f"{section}.{key} is not documented"
            documented = yaml.safe_load(row.group(1))
            assert documented == field.get_default(call_default_factory=True), (
                f"{section}.{key}: documented default differs"
            )
