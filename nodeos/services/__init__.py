"""Services: the catalog, health checks, runtimes, VIPs and ARP, the
Monitor's pure decisions (monitor.py) and the replicated service operations
(placement.py), node-side convergence (node.py) and the layer that runs them
in an agent (layer.py).

Public names: `Catalog`, `CatalogError`, `load_catalog`, `parse_catalog`,
`packaged_catalog`. Builds on `nodeos.cluster` and `nodeos.fencing`; never
imported by them.
"""

from .catalog import Catalog, CatalogError, load_catalog, packaged_catalog, parse_catalog

__all__ = ["Catalog", "CatalogError", "load_catalog", "packaged_catalog", "parse_catalog"]
