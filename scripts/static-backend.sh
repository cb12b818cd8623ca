# Sourced by the router benchmarks: a static nginx "worker" that answers every request
# instantly (so the router is what is measured) and the wrk script that posts a
# `/generate` body. `static_backend DIR PORT [SIGNALS_PORT]` writes DIR/nginx.conf and
# DIR/post.lua and starts nginx (its pid in DIR/nginx.pid; the caller's trap stops it). With
# SIGNALS_PORT, `/load` and `/kv_events` are passed to that port (scripts/kv-event-source.py).
static_backend() {
  local dir=$1 port=$2 signals=${3:-}
  local extra=""
  if [ -n "$signals" ]; then
    extra="location = /load { proxy_pass http://127.0.0.1:$signals; }
    location = /kv_events { proxy_pass http://127.0.0.1:$signals; proxy_buffering off; proxy_read_timeout 1h; proxy_http_version 1.1; }"
  fi
  cat > "$dir/nginx.conf" <<NGINX
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $dir; proxy_temp_path $dir; fastcgi_temp_path $dir;
  uwsgi_temp_path $dir; scgi_temp_path $dir;
  server {
    listen 127.0.0.1:$port;
    $extra
    location / {
      default_type application/json;
      return 200 '{"text":"ok","meta_info":{"prompt_tokens":8,"completion_tokens":1,"cached_tokens":0,"cache_hit":false,"worker_id":"static","e2e_latency":0.0}}';
    }
  }
}
NGINX
  nginx -c "$dir/nginx.conf"
  cat > "$dir/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"text": "You are a helpful assistant. What is cache-aware routing?", "sampling_params": {"max_new_tokens": 16}}'
LUA
}
