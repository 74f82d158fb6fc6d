//! Background services that live as long as the application.

pub mod game_tick;
