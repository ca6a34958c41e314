import pytest

from wgmesh import hujson
from wgmesh.errors import InputError


def test_comments_trailing_commas_and_positions():
    doc = hujson.loads('{\n  // c\n  "a": [1, {"b": "x",},], /* d */\n  "e": null,\n}\n', "p")
    assert doc.value == {"a": [1, {"b": "x"}], "e": None}
    assert doc.where(("a",)) == (3, 3)
    assert doc.where(("a", 1, "b")) == (3, 13)
    assert doc.where(("a", 1, "zzz")) == (3, 13 - 1)  # falls back to the parent object


@pytest.mark.parametrize(("text", "message"), [
    ("{'a': 1}", "p:1:2: not valid HuJSON: expected a quoted key or '}'"),
    ('{"a": 1 "b": 2}', "p:1:9: not valid HuJSON: expected ',' or '}'"),
    ('{"a": 1, "a": 2}', 'p:1:10: not valid HuJSON: duplicate key "a"'),
    ('{"a": tru}', "p:1:7: not valid HuJSON: unexpected character 't'"),
    ('{"a": 1} x', "p:1:10: not valid HuJSON: unexpected text after the end of the document"),
    ('{"a": "\x01"}', "p:1:7: not valid HuJSON: bad string"),
])
def test_errors_have_positions(text, message):
    with pytest.raises(InputError) as exc:
        hujson.loads(text, "p")
    assert str(exc.value).startswith(message)
