{ config, pkgs, ... }:
{
  imports = [ ./hardware-configuration.nix ./labkit.nix ];
  system.stateVersion = "24.05";
}
