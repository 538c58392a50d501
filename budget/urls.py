"""API routes of the Budget group (API.md: estimate, ledger) and of what sets the budget (caps, prices)."""

from django.urls import URLPattern, path

from budget import api

urlpatterns: list[URLPattern] = [
    path("budget/estimate", api.EstimateApi.as_view(), name="budget-estimate"),
    path("budget/ledger", api.LedgerApi.as_view(), name="budget-ledger"),
    path("budget/caps", api.CapsApi.as_view(), name="budget-caps"),
    path("budget/prices", api.PricesApi.as_view(), name="budget-prices"),
]
