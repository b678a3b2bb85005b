// A plugin for wharf's browser test: answers the page's greeting over the HMR WebSocket with
// what the socket's upgrade request said (its Host, and the X-Forwarded-Proto the proxy adds),
// and holds `/__wharf_hold` open until the page has that answer (`/__wharf_release`), or for
// ten seconds at most, so that a test that fails still ends.
export default {
  plugins: [{
    name: 'wharf-test',
    configureServer(server) {
      let seen = {}
      const held = []
      const release = () => held.splice(0).forEach((res) => res.end())
      server.ws.on('connection', (_socket, req) => {
        seen = { host: req.headers.host, proto: req.headers['x-forwarded-proto'] }
      })
      server.ws.on('wharf:hello', (_data, client) => client.send('wharf:hi', seen))
      server.middlewares.use('/__wharf_hold', (_req, res) => {
        held.push(res)
        setTimeout(release, 10000).unref()
      })
      server.middlewares.use('/__wharf_release', (_req, res) => {
        release()
        res.end('released')
      })
    },
  }],
}
