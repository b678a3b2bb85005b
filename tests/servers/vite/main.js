// Runs in the browser: writes which protocol carried the page, then greets the dev server over
// Vite's HMR WebSocket and writes its answer (what the socket's upgrade request looked like to
// Vite) into the page. Then it lets the held image go, so that the page's load event comes.
const say = (id, text) => document.body.insertAdjacentHTML('beforeend', `<p id="${id}">${text}</p>`)
say('protocol', `protocol=${performance.getEntriesByType('navigation')[0].nextHopProtocol}`)
import.meta.hot.on('wharf:hi', (seen) => {
  say('hmr', `hmr round trip: host=${seen.host} proto=${seen.proto}`)
  fetch('/__wharf_release')
})
import.meta.hot.send('wharf:hello', {})
