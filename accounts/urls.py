from django.urls import path

from accounts import api

auth_urlpatterns = [
    path("register", api.RegisterApi.as_view(), name="auth-register"),
    path("login", api.LoginApi.as_view(), name="auth-login"),
    path("verify", api.VerifyApi.as_view(), name="auth-verify"),
    path("resend-verification", api.ResendVerificationApi.as_view(), name="auth-resend-verification"),
    path("forgot", api.ForgotApi.as_view(), name="auth-forgot"),
    path("reset", api.ResetApi.as_view(), name="auth-reset"),
    path("logout", api.LogoutApi.as_view(), name="auth-logout"),
]

api_urlpatterns = [
    path("auth/mfa-setup", api.MfaSetupApi.as_view(), name="auth-mfa-setup"),
    path("auth/mfa-verify", api.MfaVerifyApi.as_view(), name="auth-mfa-verify"),
    path("auth/mfa-disable", api.MfaDisableApi.as_view(), name="auth-mfa-disable"),
    path("account/me", api.MeApi.as_view(), name="account-me"),
    path("account/sessions", api.SessionsApi.as_view(), name="account-sessions"),
    path("account/sessions/<str:sid>/revoke", api.SessionRevokeApi.as_view(), name="account-session-revoke"),
    path("account/change-password", api.ChangePasswordApi.as_view(), name="account-change-password"),
    path("account/update-profile", api.UpdateProfileApi.as_view(), name="account-update-profile"),
    path("account/avatar/<str:name>", api.AvatarApi.as_view(), name="account-avatar"),
    path("account/request-delete", api.RequestDeleteApi.as_view(), name="account-request-delete"),
    path("account/cancel-delete", api.CancelDeleteApi.as_view(), name="account-cancel-delete"),
    path("account/export-data", api.ExportDataApi.as_view(), name="account-export-data"),
    path("account/export-data/download", api.ExportDownloadApi.as_view(), name="account-export-download"),
    path("account/audit-list", api.AuditListApi.as_view(), name="account-audit-list"),
    path("account/api-keys", api.ApiKeysApi.as_view(), name="account-api-keys"),
    path("account/api-keys/<str:key_id>", api.ApiKeyDetailApi.as_view(), name="account-api-key"),
    path("workspaces", api.WorkspacesApi.as_view(), name="workspaces"),
]
