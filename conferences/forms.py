"""Form pieces shared by the admin and the pages."""

from conferences.models import room_scope_problem


class RoomScopeForm:
    """A form with ``every_room`` and ``conferences`` (a token's, a webhook's): one or the other, never both."""

    def clean(self):
        data = super().clean()
        problem = room_scope_problem(data.get("every_room"), data.get("conferences"))
        if problem:
            self.add_error("conferences", problem)
        return data
