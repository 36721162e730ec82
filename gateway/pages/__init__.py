"""HTML pages for people: the privacy officer's audit review and the citizen's page."""

from .blueprint import mount_pages as mount_pages
from .blueprint import pages_blueprint as pages_blueprint

__all__ = ["mount_pages", "pages_blueprint"]
