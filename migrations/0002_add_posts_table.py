"""Add the posts table, each post written by a user."""


def up(db):
    db.executescript(
        """
        CREATE TABLE posts (
            id INTEGER PRIMARY KEY,
            user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            title TEXT NOT NULL,
            body TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
        );
        CREATE INDEX posts_user_id ON posts (user_id);
        """
    )


def down(db):
    db.execute("DROP TABLE posts")
