"""PostgreSQL as the source of connection ids: the connection, the live source, the schema."""
