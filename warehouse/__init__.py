"""The warehouse: DuckDB schema (versioned migrations), loading, Parquet export, queries."""
