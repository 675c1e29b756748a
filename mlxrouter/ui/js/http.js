// Calls to the daemon from the dashboard's pages: the CSRF header and error answers.

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function cookie(name) {
  const found = document.cookie.split("; ").find((c) => c.startsWith(name + "="));
  return found ? decodeURIComponent(found.slice(name.length + 1)) : "";
}

// Litestar's CSRF check: its cookie's token, echoed in a header on every POST.
export function csrfHeaders() {
  return { "x-csrftoken": cookie("mlxrouter_csrf") };
}

export async function checked(response) {
  if (response.ok) return response;
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    message = body?.error?.message ?? body?.message ?? body?.detail ?? message;
  } catch {
    // not JSON: keep the status line
  }
  if (response.status === 401) window.location.assign("/ui/login");
  throw new ApiError(response.status, message);
}
