"""The importer's stored position: compact, and readable across versions."""

from __future__ import annotations

import json

from midonet_membership.nsdb.base import Gap, ImportPosition

EVIDENCE = "galera:192.0.2.1:3306=1201,1202;192.0.2.2:3306=;192.0.2.3:3306="


def test_each_evidence_is_written_once_and_read_back_for_every_gap():
    gaps = tuple(Gap(2 * n, 2 * n, 1765148400, EVIDENCE) for n in range(1, 101))
    position = ImportPosition(high=300, gaps=(*gaps, Gap(250, 251, 1765148401, None)),
                              config_id=3)
    text = position.encode()
    assert text.count(EVIDENCE) == 1
    assert ImportPosition.decode(text) == position
    assert ImportPosition.decode(text.encode()) == position


def test_an_older_versions_position_is_read():
    """Evidence written in each gap, fractional seconds, and a bare high-water id."""
    older = json.dumps({"high": 9, "config_id": None,
                        "gaps": [[2, 3, 1765148400.25, "pg:77"], [5, 5, 1765148400.5, None]]})
    assert ImportPosition.decode(older) == ImportPosition(high=9, gaps=(
        Gap(2, 3, 1765148400.25, "pg:77"), Gap(5, 5, 1765148400.5, None)))
    assert ImportPosition.decode("42") == ImportPosition(high=42)
    assert ImportPosition.decode("") == ImportPosition()


def test_a_token_whose_table_an_older_version_dropped_is_no_evidence():
    """An older importer keeps the tokens as evidence it cannot settle and writes the
    position back without the table: the gap's evidence is then asked for again."""
    rewritten = json.dumps({"high": 9, "config_id": None, "gaps": [[2, 3, 1765148400, "#0"]]})
    assert ImportPosition.decode(rewritten).gaps == (Gap(2, 3, 1765148400, None),)
