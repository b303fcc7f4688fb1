from django.urls import path
from rest_framework.routers import SimpleRouter

from queueing.api.views import QueueViewSet, SystemStatsView, TaskStatisticsView, WorkerControlView, WorkerViewSet

router = SimpleRouter()
router.register("queues", QueueViewSet, basename="queue")
router.register("workers", WorkerViewSet, basename="worker")

urlpatterns = [
    path("workers/<str:hostname>/<str:command>/", WorkerControlView.as_view(), name="worker-control"),
    path("statistics/tasks/", TaskStatisticsView.as_view(), name="statistics-tasks"),
    path("system/stats/", SystemStatsView.as_view(), name="system-stats"),
    *router.urls,
]
