"""The front-end for people: the commands, what they print on a terminal, and the settings
that they and the stdio node read alike. Nothing here is messaging: that is broker/."""
