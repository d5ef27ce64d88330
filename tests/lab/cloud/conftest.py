"""One cloud for every module of this package: a 3-node lab with the whole `lab-cloud` catalog
and no configuration, set up once (about 3.5 minutes on 2 cores: Ceph settles, MariaDB starts
on its RBD volume, the Monitor hands out every one-time job, each API answers at its VIP).

Each module starts from `restored`: every node up and every service healthy, whatever the
module before it did. Modules that fault whole nodes are named test_whole_cloud_* so that
they run last. The package's lab is torn down after its last test.
"""

from __future__ import annotations

import time
from typing import Iterator

import pytest

from nodeos.lab.lab import Lab

from ..cluster_helpers import wait_until
from ..test_storage_agent import settled_storage_lab
from .helpers import CLOUD_SETTLE, healthy_at_vip, jobs_finished, restored


@pytest.fixture(scope="package")
def cloud() -> Iterator[Lab]:
    for lab in settled_storage_lab(3, catalog="lab-cloud"):
        started = time.monotonic()
        wait_until(lambda: healthy_at_vip(lab, "keystone"), CLOUD_SETTLE, "keystone healthy at its VIP", interval=1.0)
        print(f"\nkeystone healthy {time.monotonic() - started:.1f}s after Ceph settled")
        jobs_finished(lab)
        restored(lab)
        print(f"every job done and every service healthy {time.monotonic() - started:.1f}s after Ceph settled")
        yield lab


@pytest.fixture(scope="module")
def lab(cloud: Lab) -> Lab:
    restored(cloud)
    return cloud
