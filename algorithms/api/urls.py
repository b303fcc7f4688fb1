from rest_framework.routers import SimpleRouter

from algorithms.api.views import AlgorithmViewSet

router = SimpleRouter()
router.register("algorithms", AlgorithmViewSet, basename="algorithm")
urlpatterns = router.urls
