from django.contrib.auth import views as auth_views
from django.utils.translation import gettext as _

from conferences import throttle


class ThrottledLoginView(auth_views.LoginView):
    """Django's login view, refusing with 429 while an account or address is throttled."""

    redirect_authenticated_user = True

    def post(self, request, *args, **kwargs):
        if throttle.is_throttled(throttle.client_address(request), request.POST.get("username")):
            form = self.get_form()
            form.errors.clear()
            form.add_error(None, _("Too many failed attempts. Wait a few minutes and try again."))
            response = self.render_to_response(self.get_context_data(form=form, throttled=True))
            response.status_code = 429
            return response
        return super().post(request, *args, **kwargs)
