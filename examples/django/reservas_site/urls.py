"""No pages: the example publishes from signals and from `manage.py notify_hub`."""

urlpatterns: list = []
