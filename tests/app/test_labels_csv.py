"""The CSV labels export defuses spreadsheet formulas; JSON keeps values verbatim."""

from __future__ import annotations

import csv
import io

from app.services.labels import csv_safe
from tests.app.conftest import Api, image_bytes

HOSTILE = ['=HYPERLINK("http://x.invalid","y")', "+1+1", "-2+3", "@SUM(A1)", "\tcat"]


def test_csv_safe_prefixes_only_formula_starts() -> None:
    assert [csv_safe(t) for t in HOSTILE] == ["'" + t for t in HOSTILE]
    assert [csv_safe(t) for t in ("cat", "a=b", "", "1-2", "'quoted")] == ["cat", "a=b", "", "1-2", "'quoted"]


def test_hostile_tags_and_file_names_do_not_reach_a_spreadsheet_as_formulas(alice: Api) -> None:
    classes = ["cat", *HOSTILE[:4]]  # a tag with whitespace at its ends is refused, so no leading tab
    rows = [{"file": "=cmd.png", "candidates": [HOSTILE[0], "cat"]}, {"file": "ok.png", "candidates": HOSTILE[1:3]}]
    r = alice.upload(
        "/datasets", rows, {"=cmd.png": image_bytes(1), "ok.png": image_bytes(2)}, name="x", classes=classes
    )
    assert r.status_code == 201, r.text
    ds = r.json()
    (item,) = [i for i in alice.get(f"/datasets/{ds['id']}/items").json()["data"] if i["file"] == "=cmd.png"]
    assert alice.patch(f"/items/{item['id']}", json={"label": HOSTILE[0]}).status_code == 200

    text = alice.get(f"/datasets/{ds['id']}/labels", params={"format": "csv"}).text
    cells = [cell for row in list(csv.reader(io.StringIO(text)))[1:] for cell in row]
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")], cells
    by_file = {row[1]: row for row in list(csv.reader(io.StringIO(text)))[1:]}
    assert by_file["'=cmd.png"][3] == "'" + HOSTILE[0]  # the reviewer's label, defused
    assert by_file["ok.png"][8] == "'" + "|".join(HOSTILE[1:3])

    exact = alice.get(f"/datasets/{ds['id']}/labels", params={"format": "json"}).json()["items"]
    assert {i["file"] for i in exact} == {"=cmd.png", "ok.png"}
    assert [i["label"] for i in exact if i["file"] == "=cmd.png"] == [HOSTILE[0]]
