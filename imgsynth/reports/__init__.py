"""Reports: tidy metric tables, PNG dashboards and grids, a self-contained HTML report."""
