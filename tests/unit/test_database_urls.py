"""A ``[database] connection`` whose driver is missing is refused in one sentence that says
what to do instead."""

from __future__ import annotations

import sys

import pytest

from midonet_membership.db import engine as db_engine


def test_mysqlclient_missing_names_its_extra_and_the_installed_driver(monkeypatch):
    monkeypatch.setitem(sys.modules, "MySQLdb", None)  # as on a venv without the extra
    with pytest.raises(db_engine.DatabaseURLError) as refused:
        db_engine.check_url("mysql+mysqldb://root@127.0.0.1/neutron")
    assert str(refused.value) == (
        "[database] connection mysql+mysqldb://: its driver is not installed (MySQLdb); "
        "install midonet-membership[mysqlclient] (tools/ensure-mysqlclient), or use "
        "mysql+pymysql://... (installed with midonet-membership)")

