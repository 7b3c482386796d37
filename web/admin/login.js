// The login page posts a plain form (it works without this script); this
// only explains why the server sent us back here.
const reasons = {
  wrong: 'Wrong password.',
  limited: 'Too many login attempts: wait a few seconds and try again.',
};
const reason = reasons[new URLSearchParams(location.search).get('error')];
if (reason) {
  const p = document.getElementById('login-error');
  p.textContent = reason;
  p.hidden = false;
}
