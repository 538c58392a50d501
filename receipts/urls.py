"""API routes of the Receipts group (API.md), plus the log's list and a receipt's bundle."""

from django.urls import URLPattern, path

from receipts import api

urlpatterns: list[URLPattern] = [
    path("receipts", api.ReceiptListApi.as_view(), name="receipts"),
    path("receipts/chain-head", api.ChainHeadApi.as_view(), name="receipts-chain-head"),
    path("receipts/<str:run_id>/verify", api.VerifyApi.as_view(), name="receipt-verify"),
    path("receipts/<str:run_id>/reground", api.RegroundApi.as_view(), name="receipt-reground"),
    path("receipts/<str:run_id>/bundle", api.BundleApi.as_view(), name="receipt-bundle"),
]
