# A Coder workspace template: each workspace is one privileged pod running envbox, which pulls
# the workspace image and runs it as one unprivileged system container (sysbox-runc). The same
# settings as deploy/kubernetes/ (see the comments there for the why of each), for Coder.
#
#   coder templates push envbox -d deploy/coder --variable namespace=coder-workspaces

terraform {
  required_providers {
    coder = {
      source = "coder/coder"
    }
    kubernetes = {
      source = "hashicorp/kubernetes"
    }
  }
}

variable "use_kubeconfig" {
  type        = bool
  default     = false
  description = <<-EOF
  Use the Coder host's ~/.kube/config (true), or the service account of the pod Coder runs in,
  when it runs in the cluster the workspaces go to (false).
  EOF
}

variable "namespace" {
  type        = string
  description = "The namespace the workspaces are created in (it must exist)."
}

variable "envbox_image" {
  type        = string
  default     = "envbox:latest"
  description = "The envbox image (deploy/image/Dockerfile), pushed where the nodes can pull it; pin a digest."
}

variable "pull_secret" {
  type        = string
  default     = "coder-workspace-pull"
  description = "A kubernetes.io/dockerconfigjson secret in the namespace for private workspace images; it may be absent."
}

variable "node_cache" {
  type        = bool
  default     = false
  description = <<-EOF
  Keep images' blobs and unpacked layers in a directory of each node (hostPath
  /var/lib/envbox/node-cache) shared by its workspaces, instead of on each workspace's volume: a
  new workspace of an image its node holds starts without pulling (ENVBOX_NODE_CACHE; README,
  "Node cache").
  EOF
}

locals {
  node_cache_dir = "/var/lib/envbox/node-cache"
}

provider "coder" {}

provider "kubernetes" {
  config_path = var.use_kubeconfig ? "~/.kube/config" : null
}

data "coder_workspace" "me" {}
data "coder_workspace_owner" "me" {}

data "coder_parameter" "image" {
  name         = "image"
  display_name = "Image"
  description  = "The workspace image: any OCI image with the user below (tags and @sha256: digests)."
  type         = "string"
  default      = "codercom/enterprise-base:ubuntu"
  mutable      = true
  order        = 1
}

data "coder_parameter" "username" {
  name         = "username"
  display_name = "User"
  description  = "The image's user who owns the home directory and runs the agent."
  type         = "string"
  default      = "coder"
  mutable      = false
  order        = 2
  validation {
    regex = "^[a-z_][a-z0-9_-]*$"
    error = "A user name of the image's /etc/passwd, e.g. coder."
  }
}

data "coder_parameter" "cpu" {
  name         = "cpu"
  display_name = "CPUs"
  type         = "number"
  default      = 2
  mutable      = true
  order        = 3
  validation {
    min = 1
    max = 16
  }
}

data "coder_parameter" "memory" {
  name         = "memory"
  display_name = "Memory (GiB)"
  type         = "number"
  default      = 4
  mutable      = true
  order        = 4
  validation {
    min = 1
    max = 64
  }
}

data "coder_parameter" "disk" {
  name         = "disk"
  display_name = "Disk (GiB)"
  description  = "The persistent volume: home, the workspace's Docker data, envbox's image cache."
  type         = "number"
  default      = 30
  mutable      = false
  order        = 5
  validation {
    min = 10
    max = 500
  }
}

locals {
  name   = "coder-${lower(data.coder_workspace_owner.me.name)}-${lower(data.coder_workspace.me.name)}"
  user   = data.coder_parameter.username.value
  home   = local.user == "root" ? "/root" : "/home/${local.user}"
  labels = {
    "app.kubernetes.io/name"     = "coder-workspace"
    "app.kubernetes.io/instance" = local.name
    "app.kubernetes.io/part-of"  = "coder"
    "com.coder.workspace.id"     = data.coder_workspace.me.id
    "com.coder.user.id"          = data.coder_workspace_owner.me.id
  }
}

resource "coder_agent" "main" {
  os             = "linux"
  arch           = "amd64"
  startup_script = <<-EOT
    # The home volume starts empty: give it the image's shell settings once.
    [ -f ~/.profile ] || cp /etc/skel/.profile ~ 2>/dev/null || true
    [ -f ~/.bashrc ] || cp /etc/skel/.bashrc ~ 2>/dev/null || true
  EOT
}

# The agent's token, for the pod's CODER_AGENT_TOKEN: a secret, so it is never in the pod spec
# (which anyone who may read pods can read). Gone while the workspace is stopped.
resource "kubernetes_secret" "agent" {
  count = data.coder_workspace.me.start_count
  metadata {
    name      = "${local.name}-agent"
    namespace = var.namespace
    labels    = local.labels
  }
  data = {
    token = coder_agent.main.token
  }
}

# home, cache/docker, cache/containers: the Go envbox template's sub-paths, so its volumes keep
# their data; cache/envbox: envbox's image cache and the workspace's root filesystem.
resource "kubernetes_persistent_volume_claim" "workspace" {
  metadata {
    name      = "${local.name}-workspace"
    namespace = var.namespace
    labels    = local.labels
  }
  wait_until_bound = false
  spec {
    access_modes = ["ReadWriteOnce"]
    resources {
      requests = {
        storage = "${data.coder_parameter.disk.value}Gi"
      }
    }
  }
}

# One replica, Recreate: stopped with the workspace (count 0), back by itself after an eviction,
# and never two envboxes on one volume.
resource "kubernetes_deployment" "main" {
  count            = data.coder_workspace.me.start_count
  wait_for_rollout = false

  metadata {
    name      = local.name
    namespace = var.namespace
    labels    = local.labels
  }

  spec {
    replicas = 1
    selector {
      match_labels = {
        "app.kubernetes.io/instance" = local.name
      }
    }
    strategy {
      type = "Recreate"
    }

    template {
      metadata {
        labels = local.labels
      }

      spec {
        # Above ENVBOX_STOP_TIMEOUT (90 s), so envbox stops the workspace before the SIGKILL.
        termination_grace_period_seconds = 120
        automount_service_account_token  = false

        container {
          name              = "dev"
          image             = var.envbox_image
          image_pull_policy = "IfNotPresent"
          command           = ["/envbox", "docker"]

          security_context {
            privileged = true
          }

          resources {
            requests = {
              cpu    = "${data.coder_parameter.cpu.value * 250}m"
              memory = "${data.coder_parameter.memory.value * 512}Mi"
            }
            limits = {
              cpu    = data.coder_parameter.cpu.value
              memory = "${data.coder_parameter.memory.value}Gi"
            }
          }

          env {
            name  = "CODER_AGENT_URL"
            value = data.coder_workspace.me.access_url
          }
          env {
            name = "CODER_AGENT_TOKEN"
            value_from {
              secret_key_ref {
                name = kubernetes_secret.agent[0].metadata[0].name
                key  = "token"
              }
            }
          }
          env {
            name  = "CODER_BOOTSTRAP_SCRIPT"
            value = coder_agent.main.init_script
          }
          env {
            name  = "CODER_INNER_IMAGE"
            value = data.coder_parameter.image.value
          }
          env {
            name  = "CODER_INNER_USERNAME"
            value = local.user
          }
          env {
            name  = "CODER_INNER_HOSTNAME"
            value = lower(data.coder_workspace.me.name)
          }
          env {
            name = "CODER_IMAGE_PULL_SECRET"
            value_from {
              secret_key_ref {
                name     = var.pull_secret
                key      = ".dockerconfigjson"
                optional = true
              }
            }
          }
          env {
            name  = "CODER_MOUNTS"
            value = "/home/coder:${local.home}"
          }
          # Divisor 1: whole CPUs (rounded up; the pod's own cgroup still holds the workspace to
          # its exact limit) and bytes, the forms CODER_CPUS and CODER_MEMORY read.
          env {
            name = "CODER_CPUS"
            value_from {
              resource_field_ref {
                container_name = "dev"
                resource       = "limits.cpu"
                divisor        = "1"
              }
            }
          }
          env {
            name = "CODER_MEMORY"
            value_from {
              resource_field_ref {
                container_name = "dev"
                resource       = "limits.memory"
                divisor        = "1"
              }
            }
          }
          env {
            name  = "ENVBOX_STATE_DIR"
            value = "/var/lib/coder/envbox"
          }
          env {
            name  = "ENVBOX_RUN_DIR"
            value = "/run/envbox"
          }
          env {
            name  = "ENVBOX_STOP_TIMEOUT"
            value = "90s"
          }
          # Empty (off) unless var.node_cache.
          env {
            name  = "ENVBOX_NODE_CACHE"
            value = var.node_cache ? local.node_cache_dir : ""
          }

          volume_mount {
            name       = "workspace"
            mount_path = "/home/coder"
            sub_path   = "home"
          }
          volume_mount {
            name       = "workspace"
            mount_path = "/var/lib/coder/docker"
            sub_path   = "cache/docker"
          }
          volume_mount {
            name       = "workspace"
            mount_path = "/var/lib/coder/containers"
            sub_path   = "cache/containers"
          }
          volume_mount {
            name       = "workspace"
            mount_path = "/var/lib/coder/envbox"
            sub_path   = "cache/envbox"
          }
          volume_mount {
            name       = "sysbox"
            mount_path = "/var/lib/sysbox"
          }
          volume_mount {
            name       = "run"
            mount_path = "/run/envbox"
          }
          volume_mount {
            name       = "usr-src"
            mount_path = "/usr/src"
            read_only  = true
          }
          volume_mount {
            name       = "lib-modules"
            mount_path = "/lib/modules"
            read_only  = true
          }
          dynamic "volume_mount" {
            for_each = var.node_cache ? [1] : []
            content {
              name       = "node-cache"
              mount_path = local.node_cache_dir
            }
          }
        }

        volume {
          name = "workspace"
          persistent_volume_claim {
            claim_name = kubernetes_persistent_volume_claim.workspace.metadata[0].name
          }
        }
        # On the node's disk, not the container's overlayfs: sysbox-mgr's data root.
        volume {
          name = "sysbox"
          empty_dir {}
        }
        # ENVBOX_RUN_DIR: per-start files, a tmpfs.
        volume {
          name = "run"
          empty_dir {
            medium     = "Memory"
            size_limit = "256Mi"
          }
        }
        volume {
          name = "usr-src"
          host_path {
            path = "/usr/src"
          }
        }
        volume {
          name = "lib-modules"
          host_path {
            path = "/lib/modules"
            type = "Directory"
          }
        }
        # ENVBOX_NODE_CACHE's directory on the node, shared by its workspaces.
        dynamic "volume" {
          for_each = var.node_cache ? [1] : []
          content {
            name = "node-cache"
            host_path {
              path = local.node_cache_dir
              type = "DirectoryOrCreate"
            }
          }
        }
      }
    }
  }
}
