"""The fault and fuzz campaign, short form: one run against a real server and workers, each check a test.

The campaign (``campaign.py``, shared with the long soak ``bench/soak.py``) runs once per module: 240 tasks on
4 workers, the server killed with SIGKILL four times and two workers once each, the worker port fuzzed, the
client API attacked and flooded with 200 connections. Each test then asserts one of its checks, with the
evidence in the failure message. ``FARMHAND_CAMPAIGN_SEED`` picks the fuzz bytes (default 0).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from campaign import CHECKS, CampaignConfig, CampaignReport, run_campaign

pytestmark = pytest.mark.e2e


def short_config(folder: Path) -> CampaignConfig:
    """The short form: about a minute on a 2-core machine."""
    return CampaignConfig(
        folder=folder, tasks=240, workers=4, task_sleep=0.5, server_kills=4, worker_kills=2,
        seed=int(os.environ.get("FARMHAND_CAMPAIGN_SEED", "0")), job_timeout_s=150,
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> CampaignReport:
    result = run_campaign(short_config(tmp_path_factory.mktemp("campaign")))
    print("\n".join(result.timeline))
    return result


@pytest.mark.parametrize("check", list(CHECKS))
def test_campaign(report: CampaignReport, check: str) -> None:
    result = report.checks[check]
    if not result.ok:
        pytest.fail(result.describe(), pytrace=False)
