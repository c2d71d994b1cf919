"""newsflow: news feeds to a queryable warehouse."""

__version__ = "0.1.0"
