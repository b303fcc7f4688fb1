"""Who may do what: owners touch their own tasks; staff and the ``operators`` group see everything
and control queues and workers."""
from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission

OPERATORS_GROUP = "operators"


def is_operator(user: Any) -> bool:
    """Whether the user acts as an operator in this request. An API key without the ``operate`` scope
    acts on its owner's own tasks only, even an operator's (accounts/authentication.py marks its user)."""
    if getattr(user, "_conveyor_without_operate", False):
        return False
    return has_operator_role(user)


def has_operator_role(user: Any) -> bool:
    """Staff, superusers and the operators group, whatever credential the request carries."""
    if not getattr(user, "is_authenticated", False):
        return False
    if user.is_staff or user.is_superuser:
        return True
    cached = getattr(user, "_conveyor_is_operator", None)
    if cached is None:
        cached = user.groups.filter(name=OPERATORS_GROUP).exists()
        user._conveyor_is_operator = cached
    return cached


class IsOperator(BasePermission):
    message = "operators only"

    def has_permission(self, request: Any, view: Any) -> bool:
        return is_operator(request.user)
