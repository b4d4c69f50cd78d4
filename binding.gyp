{
  "targets": [
    {
      "target_name": "socket_proxyd",
      "sources": [
        "native/access_log.cc",
        "native/addon.cc",
        "native/datagram.cc",
        "native/engine.cc",
        "native/forwarder.cc",
        "native/histograms.cc",
        "native/js_errors.cc",
        "native/linger.cc",
        "native/net.cc",
        "native/pipe_pool.cc",
        "native/proxy_header.cc",
        "native/shovel.cc",
        "native/socket_options.cc",
        "native/syscalls.cc",
        "native/upstream.cc",
        "native/worker.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags!": ["-fexceptions"],
      "cflags_cc!": ["-fexceptions", "-std=gnu++17", "-std=gnu++20"],
      "cflags_cc": ["-std=c++17", "-fno-exceptions", "-Wall", "-Wextra", "-fvisibility=hidden"],
      "ldflags": ["-pthread"]
    }
  ]
}
