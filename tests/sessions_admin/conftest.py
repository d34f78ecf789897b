import pytest
from django.test import Client

from tests.sessions_admin.factories import make_user


@pytest.fixture
def staff(db):
    return make_user("staffer", superuser=True)


@pytest.fixture
def staff_client(staff):
    client = Client()
    client.force_login(staff)
    return client


@pytest.fixture
def nonstaff_client(db):
    client = Client()
    client.force_login(make_user("visitor"))
    return client


@pytest.fixture
def staff_without_permissions_client(db):
    client = Client()
    client.force_login(make_user("newbie", staff=True))
    return client


@pytest.fixture
def coze_deletions(monkeypatch):
    """What the deletion engine hands to Coze, recorded; each item counts as deleted there."""
    from sessions_admin import retention

    sent: list = []

    def record(deletions):
        sent.append(deletions)
        return retention.CozeOutcome(deleted=len(deletions))

    monkeypatch.setattr(retention, "send_coze_deletions", record)
    return sent
