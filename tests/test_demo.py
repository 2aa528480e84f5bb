"""`atlantic demo`'s results file: the document it writes, the rows and cells read back
from it (what the table prints), and a write that is whole or absent."""

from __future__ import annotations

import json
import stat

from atlantic.client import demo

ROWS = [demo.Row("HTTP 3 x 2 MB, a new connection per chunk", "ms per chunk", 0.42, 0.1,
                 (0.41, 0.42, 0.43), (0.09, 0.1, 0.12)),
        demo.Row("yt-dlp, HLS stream (~20 segments of 2 MB)", "s total", 12.0, 4.0, (12.0,), (4.0,))]


def doc() -> dict:
    return demo.result_doc(ROWS, rtt_ms=40, chunks=3, date="2026-11-22 03:00 UTC", notes=("a note",))


def test_document_holds_every_figure_and_sample():
    """The document has the RTT, chunk count, date, each row's medians, ratio and samples."""
    d = doc()
    assert (d["benchmark"], d["rtt_ms"], d["chunks"], d["date"], d["notes"]) == (
        "demo", 40, 3, "2026-11-22 03:00 UTC", ["a note"])
    first = d["rows"][0]
    assert (first["without_s"], first["with_atlantic_s"], first["faster"]) == (0.42, 0.1, 0.42 / 0.1)
    assert first["without_samples_s"] == [0.41, 0.42, 0.43] and first["with_atlantic_samples_s"] == [0.09, 0.1, 0.12]


def test_rows_survive_a_round_trip_through_json():
    """Rows read back from the written JSON equal the rows measured."""
    assert demo.rows_from_doc(json.loads(json.dumps(doc()))) == ROWS


def test_table_cells_format_each_unit():
    """Chunk rows print milliseconds, the yt-dlp row seconds, and the ratio to two places."""
    assert demo.table_cells(ROWS[0]) == ("HTTP 3 x 2 MB, a new connection per chunk", "420 ms per chunk",
                                         "100 ms per chunk", "4.20x")
    assert demo.table_cells(ROWS[1])[1:] == ("12.0 s total", "4.0 s total", "3.00x")


def test_write_doc_replaces_the_file_whole_and_readable(tmp_path):
    """The file is written (directories made), replaced on the next run, 0644, no temp left behind."""
    path = tmp_path / "state" / "demo.json"
    demo.write_doc({"old": True}, path)
    demo.write_doc(doc(), path)
    assert json.loads(path.read_text()) == doc()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["demo.json"]


def test_default_path_is_in_the_state_dir():
    """By default the results land in the daemon's default state_dir, as `--help` says."""
    assert str(demo.default_json_path()) == "/run/atlantic/demo.json"
