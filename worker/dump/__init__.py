"""The managed schema as SQL that recreates it, followed by the rows that record what is
applied (as dbmate's schema.sql and Rails' structure.sql): one module per backend."""
