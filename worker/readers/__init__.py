"""Migration SQL files in each tool's format, read into one record: sql_file.SqlFile.

    file name (names.py)                      markers (markers.py)     reader
    NNNN_name.sql                             -- migrate:up        ->  dbmate.py
                                              -- +goose Up         ->  goose.py
                                              -- +migrate Up       ->  sql_migrate.py
    NNNN_title.up.sql [+ .down.sql]           none                 ->  golang_migrate.py
    V{version}__desc.sql [+ U{version}__...]  none                 ->  flyway.py

The name picks the reader; the markers confirm it, and a file whose markers contradict its
name, or that holds two formats' markers, is refused naming the file and line. Every reader
cuts statements by the database's own rules (the `split_statements` it is given), but for
text a format marks as one statement, which runs as written.
"""
