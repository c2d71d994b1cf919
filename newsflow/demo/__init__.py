"""The bundled demo: "The Harbour Gazette", a fictional news site written for this project,
served on loopback with an RSS 2.0 and an Atom feed, full of the boilerplate real sites have."""

from __future__ import annotations

from importlib.resources import files

from newsflow.loopback import LoopbackSite, Route

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".xml": "application/xml; charset=utf-8",
    ".json": "application/feed+json",
}
FEED_CONTENT_TYPES = {
    "rss.xml": "application/rss+xml; charset=utf-8",
    "atom.xml": "application/atom+xml; charset=utf-8",
}
DEMO_FEEDS = (
    ("/rss.xml", "Harbour Gazette - Top stories (RSS 2.0)"),
    ("/atom.xml", "Harbour Gazette - Region (Atom)"),
)


def demo_routes() -> dict[str, Route]:
    root = files("newsflow.demo").joinpath("site")
    routes: dict[str, Route] = {}

    def walk(node, prefix: str) -> None:
        for child in node.iterdir():
            if child.is_dir():
                walk(child, f"{prefix}{child.name}/")
                continue
            suffix = "." + child.name.rsplit(".", 1)[-1]
            if suffix not in CONTENT_TYPES:
                continue
            content_type = FEED_CONTENT_TYPES.get(child.name if not prefix else "", CONTENT_TYPES[suffix])
            routes[f"/{prefix}{child.name}"] = Route(
                body=child.read_bytes(), content_type=content_type, gzip=True
            )

    walk(root, "")
    if "/index.html" in routes:
        routes["/"] = routes["/index.html"]
    return routes


def demo_site(host: str = "127.0.0.1", port: int = 0) -> LoopbackSite:
    return LoopbackSite(host, port, demo_routes())
