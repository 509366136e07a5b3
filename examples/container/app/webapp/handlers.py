import email.utils
import http.server
import urllib.parse


def make_app(config):
    routes = [urllib.parse.urljoin("http://localhost:%d" % config["port"], r)
              for r in config["routes"]]
    return {"routes": routes, "server": http.server.HTTPServer.__name__,
            "date": bool(email.utils.formatdate())}
